// GET of an http(s) URL a server was told it may fetch from: what the
// api_server does for an image_url that is not a data: URL, and only for hosts
// its operator listed (image_url_hosts), since a request that names a URL
// would otherwise make the server reach anything it can (SSRF). Bounded in
// every way a remote party could stretch: one deadline for the whole fetch,
// redirects included; the body's size; the number of redirects, each to a
// listed host. https verifies the certificate against the system's CAs and
// the host name.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <hostrun/status.hpp>

namespace hostrun::http {

struct FetchLimits {
  // Host names or addresses, compared case-insensitively with the URL's (and
  // every redirect's) host; "*" allows any. Empty: nothing is fetched.
  std::vector<std::string> allowed_hosts;
  size_t max_bytes = size_t(20) << 20;
  std::chrono::milliseconds timeout{10'000};  // the whole fetch
  int max_redirects = 3;
};

// Whether fetch_url would contact `url`'s host (it must also be http or https).
bool fetch_allowed(std::string_view url, const FetchLimits& limits);

// The body of a 200 answer. permission_denied for a host not allowed (the
// first URL's or a redirect's), deadline_exceeded past the timeout,
// resource_exhausted past max_bytes or max_redirects, unavailable when the
// host cannot be reached or answers anything else; each message says which.
Result<std::vector<uint8_t>> fetch_url(std::string_view url, const FetchLimits& limits);

}  // namespace hostrun::http
