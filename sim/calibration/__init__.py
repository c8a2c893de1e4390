"""Calibrating the performance model on measured data: kernel tables, measured serving runs in the formats
people already have, the simulator replaying a run, the fit of a profile's engine costs with the simulator in
the loop, and the validation report (``fleettwin data calibrate``)."""
