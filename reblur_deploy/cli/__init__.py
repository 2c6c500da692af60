"""Console scripts. Each is thin: parse options, call the library, print."""
