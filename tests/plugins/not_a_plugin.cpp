// A shared library that is not a hostrun plugin: it has no entry symbol.
extern "C" __attribute__((visibility("default"))) int some_other_function() { return 7; }
