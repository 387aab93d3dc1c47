"""Activation data for training: the store arrays a coder reads, in memory or streamed, moved to the device."""
