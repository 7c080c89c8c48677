"""Reports: report.md and report.html rendered from one record (report.json), parity.json, the diagnosis and profile
sections. Measuring lives in validate/ and profiling/; this layer only writes what they measured."""
