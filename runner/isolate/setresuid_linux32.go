//go:build linux && (386 || arm)

package isolate

import "syscall"

// sysSetresuid: on these architectures SYS_SETRESUID takes 16-bit uids.
const sysSetresuid = syscall.SYS_SETRESUID32
