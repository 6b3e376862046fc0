"""Evidence experiments: EoS, pre-training sharpness, mixing ground truth."""
