# snapshot-create-list
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img snapshot -c s1 a.qcow2
qemu-img snapshot -c s2 a.qcow2
qemu-img snapshot -l a.qcow2 | sed 's/ [0-9][0-9]:[0-9][0-9]:[0-9][0-9]\.[0-9]*/ T/'
