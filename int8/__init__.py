"""Steps that make the converter's int8 file closer to float, one module each.

Every step is fitted on calibration crops, scored on calibration crops it did not fit on (`Crops.selection`), kept
only if it gains there, and described by one summary dataclass with `as_dict()` (parity.json) and `markdown()`
(report.md). The held-out photos stay out of every choice.
"""
