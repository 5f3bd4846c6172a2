# io-missing-file
qemu-io -c 'read 0 512' nosuch.qcow2; echo rc=$?
