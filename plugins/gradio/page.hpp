// The web chat page served at "/" (page.cpp holds it).
#pragma once

namespace hostrun::gradio {

// HTML with two placeholders the server replaces: TITLE_HTML (escaped text)
// and CONFIG_JSON (a JSON object with "</" escaped).
extern const char* const kPageTemplate;

}  // namespace hostrun::gradio
