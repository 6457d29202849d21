"""capaug's generative side: data, the Capacity Manipulation diffusion model, training, synthesis, metrics."""
