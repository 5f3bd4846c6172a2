"""blocklayer-img: a drop-in for qemu-img 7.2 (one module per subcommand)."""
