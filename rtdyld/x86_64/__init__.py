"""Everything specific to x86-64: edge kinds, GOT and stubs, fixups."""
