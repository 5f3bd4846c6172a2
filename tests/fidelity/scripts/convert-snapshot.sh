# convert-snapshot
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-io -c 'write -P 1 0 4k' a.qcow2 >/dev/null
qemu-img snapshot -c s1 a.qcow2
qemu-io -c 'write -P 2 0 4k' a.qcow2 >/dev/null
qemu-img convert -l snapshot.name=s1 -O raw a.qcow2 s.raw
qemu-io -f raw -c 'read -P 1 0 4k' s.raw | sed 's/(.*)/X/'
