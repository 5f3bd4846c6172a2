# snapshot-missing
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img snapshot -a nosuch a.qcow2; echo rc=$?
qemu-img snapshot -d nosuch a.qcow2; echo rc=$?
