"""sharpmix workers: the compute core (curvature, data, integrations) and the sweep worker
around it, which reads the contract and reaches the service side only through the queue."""
