"""Evidence experiments (issue 6): EoS, pre-training sharpness, mixing ground truth."""
