// Everything a plugin needs, in one include.
#pragma once

#include "hostrun/config.hpp"
#include "hostrun/engine.hpp"
#include "hostrun/exec.hpp"
#include "hostrun/frontend.hpp"
#include "hostrun/kv_cache.hpp"
#include "hostrun/log.hpp"
#include "hostrun/model.hpp"
#include "hostrun/plugin.hpp"
#include "hostrun/quantizer.hpp"
#include "hostrun/status.hpp"
#include "hostrun/tensor.hpp"
#include "hostrun/tokenizer.hpp"
#include "hostrun/version.hpp"
#include "hostrun/weights.hpp"
