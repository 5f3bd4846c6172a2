# io-unaligned
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write -P 3 1 3' -c 'read -P 3 1 3' -c 'read -P 0 0 1' a.qcow2 | sed 's/(.*)/X/'
