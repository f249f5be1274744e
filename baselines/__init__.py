"""Generators behind one interface: the NTM adapter, the baselines it is compared with, the registry."""
