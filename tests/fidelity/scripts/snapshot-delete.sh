# snapshot-delete
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img snapshot -c s1 a.qcow2
qemu-img snapshot -d s1 a.qcow2
qemu-img snapshot -l a.qcow2
qemu-img check a.qcow2
