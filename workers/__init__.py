"""sharpmix workers: the compute core (curvature, data) and the sweep worker around it."""
