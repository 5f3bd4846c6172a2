# create-cluster-bad
qemu-img create -f qcow2 -o cluster_size=1000 a.qcow2 1M; echo rc=$?
