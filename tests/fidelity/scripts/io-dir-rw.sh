# io-dir-rw
mkdir d
qemu-io -c 'read 0 1' d; echo rc=$?
qemu-io -r -c 'read 0 1' d; echo rc=$?
