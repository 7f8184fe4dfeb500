"""Pure data types and codecs: no I/O, no clocks, no state machines."""
