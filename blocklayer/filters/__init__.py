"""Filter drivers: nodes with one data child that change how requests pass."""
