# io-bad-option
qemu-io --frob; echo rc=$?
