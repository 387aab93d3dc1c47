"""Running across processes: the torch process group and its collectives, Ray clusters, Ray Train workers."""
