package isolate

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"syscall"
)

// POSIX ACL entries as Linux stores them in system.posix_acl_access
// (linux/posix_acl_xattr.h): a version word, then {tag, perm, id}
// entries sorted by tag and id.
const (
	aclXattr    = "system.posix_acl_access"
	aclVersion  = 2
	aclUserObj  = 0x01
	aclUser     = 0x02
	aclGroupObj = 0x04
	aclMask     = 0x10
	aclOther    = 0x20
	aclUndef    = 0xffffffff
	permX       = 1
	permRWX     = 7
)

// RestrictDir makes dir root's, mode 0700, and lets exactly uids search it
// (enter, not list) through a POSIX ACL: the parent of one tenant's job
// directories, which other tenants' job users must not reach even when a
// job of this tenant opens its own directory to everyone. A file system
// without ACLs gives an error wrapping ErrUnsupported, never a directory
// left open.
func RestrictDir(dir string, uids []uint32) error {
	if err := os.Chown(dir, 0, 0); err != nil {
		return fmt.Errorf("isolate: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("isolate: %w", err)
	}
	ids := slices.Clone(uids)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	buf := binary.LittleEndian.AppendUint32(nil, aclVersion)
	entry := func(tag, perm uint16, id uint32) {
		buf = binary.LittleEndian.AppendUint16(buf, tag)
		buf = binary.LittleEndian.AppendUint16(buf, perm)
		buf = binary.LittleEndian.AppendUint32(buf, id)
	}
	entry(aclUserObj, permRWX, aclUndef)
	for _, id := range ids {
		entry(aclUser, permX, id)
	}
	entry(aclGroupObj, 0, aclUndef)
	entry(aclMask, permX, aclUndef)
	entry(aclOther, 0, aclUndef)
	if err := syscall.Setxattr(dir, aclXattr, buf, 0); err != nil {
		if errors.Is(err, syscall.ENOTSUP) || errors.Is(err, syscall.EOPNOTSUPP) {
			return fmt.Errorf("%w: %s: the file system has no POSIX ACLs (mount it with acl, or move the work directory): %v", ErrUnsupported, dir, err)
		}
		return fmt.Errorf("isolate: ACL on %s: %w", dir, err)
	}
	return nil
}
