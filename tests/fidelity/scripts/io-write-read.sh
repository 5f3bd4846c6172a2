# io-write-read
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write -P 0xab 0 64k' -c 'read -P 0xab 0 64k' a.qcow2 | sed 's/(.*)/X/'
