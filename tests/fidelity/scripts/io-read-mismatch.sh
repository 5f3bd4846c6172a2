# io-read-mismatch
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 0 4k' -c 'read -P 2 0 4k' a.qcow2 | sed 's/(.*)/X/'
