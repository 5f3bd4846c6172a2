# amend-bad
qemu-img create -f qcow2 a.qcow2 1M >/dev/null
qemu-img amend -o cluster_size=4096 a.qcow2; echo rc=$?
