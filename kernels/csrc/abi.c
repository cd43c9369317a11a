/* The interface version of the compiled CPU kernels: kernels/native.py refuses a library whose
 * version differs from its own (a stale or foreign file in the cache). Bump it with any change
 * to an exported function's arguments or meaning. */
int cvig_abi_version(void) { return 2; }
