"""The benchmark tier (issue 9): BatchNorm speed per adapter against a memory-bandwidth bound measured in the
same run, and the oracle's speed. Collected only when asked (`pytest benchmarks`; the default testpaths is
tests/), never part of a conformance verdict. See benchmarks/README.md."""
