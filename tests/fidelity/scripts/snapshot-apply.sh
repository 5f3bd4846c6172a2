# snapshot-apply
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 0 4k' a.qcow2 >/dev/null
qemu-img snapshot -c s1 a.qcow2
qemu-io -c 'write -P 2 0 4k' a.qcow2 >/dev/null
qemu-img snapshot -a s1 a.qcow2
qemu-io -c 'read -P 1 0 4k' a.qcow2 | sed 's/(.*)/X/'
