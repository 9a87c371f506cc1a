"""pdserve: disaggregated prefill/decode LLM serving on Ray Serve with vLLM and NIXL."""

__version__ = "0.1.0"
