# io-help
qemu-io -c help | head -20
