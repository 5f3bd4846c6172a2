# io-snapshot-mode
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -s -c 'write -P 9 0 4k' a.qcow2 | sed 's/(.*)/X/'
qemu-io -c 'read -P 0 0 4k' a.qcow2 | sed 's/(.*)/X/'
