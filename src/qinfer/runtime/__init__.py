"""Executing graphs: sessions, plans, threads. Needs numpy and qinfer's compiled kernels only."""
