# io-read-eof
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'read 1M 512' a.qcow2
