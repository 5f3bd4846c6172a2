# blkdebug-json
qemu-img create -f raw a.raw 1M >/dev/null
qemu-io -c 'read 0 512' "json:{'driver': 'raw', 'file': {'driver': 'blkdebug', 'image': {'driver': 'file', 'filename': 'a.raw'}}}" | sed 's/(.*)/X/'
