# io-no-file
qemu-io -c 'read 0 512'; echo rc=$?
