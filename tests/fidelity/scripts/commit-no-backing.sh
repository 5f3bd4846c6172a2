# commit-no-backing
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img commit a.qcow2; echo rc=$?
