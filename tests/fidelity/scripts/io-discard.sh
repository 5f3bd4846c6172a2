# io-discard
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 0 256k' -c 'discard 64k 64k' -c map a.qcow2 | sed 's/(.*)/X/'
qemu-img map a.qcow2
