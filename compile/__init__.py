"""Compilers from the exported step to deployable bundles (TVM, Core ML)."""
