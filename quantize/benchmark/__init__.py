"""Benchmarks: the Python pipeline interleaved per variant, the decoder stage of a click, everything mode, and OpenVINO benchmark_app."""
