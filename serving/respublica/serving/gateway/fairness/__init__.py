"""Fair sharing of saturated models between tenants: the Virtual Token Counter (README.md)."""
