package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"unsafe"

	"github.com/cilium/ebpf"
)

func stackFlags(s Stacks) uint32 {
	var v uint32
	if s&StacksKernel != 0 {
		v |= settingKernelStack
	}
	if s&StacksUser != 0 {
		v |= settingUserStack
	}
	return v
}

func boolU32(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

// Layout of the stacked records after the 64-byte cap_event (struct
// stack_head, then kstack, then ustack in struct cap_event_stacks).
const (
	stackHeadSize    = int(unsafe.Sizeof(captraceStackHead{}))
	kstackBytes      = MaxStackDepth * 8
	buildIDFrameSize = 32 // struct bpf_stack_build_id (uapi, fixed)
	exeIDSize        = int(unsafe.Sizeof(captraceExeId{}))
	// bpf_stack_build_id.status values (uapi).
	buildIDValid = 1
	buildIDIP    = 2
)

// loadTierStacks loads a tier with the stack capture; when the kernel
// refuses that program it loads the same tier without it (the stack code
// is then dead and the verifier removes it) and says why in stacksErr.
func loadTierStacks(tier Tier, cfg loadConfig) (lt *loadedTier, stacksErr, err error) {
	lt, err = loadTier(tier, cfg)
	if err == nil || !cfg.stacks {
		return lt, nil, err
	}
	var verr *ebpf.VerifierError
	if !errors.As(err, &verr) {
		return nil, nil, err
	}
	cfg.stacks = false
	lt, err2 := loadTier(tier, cfg)
	if err2 != nil {
		return nil, nil, err // the first error: stacks were not the problem
	}
	return lt, fmt.Errorf("the kernel refused the stack capture (bpf_get_stack with BPF_F_USER_BUILD_ID in a %s program needs Linux >= 5.5): %w", tier, err), nil
}

// decodeStacks reads the stacks that follow a cap_event in a stacked record.
// Lengths come from the kernel and are bounded by the record.
func decodeStacks(b []byte) *RawStacks {
	le := binary.LittleEndian
	if len(b) < stackHeadSize {
		return &RawStacks{KernelErr: -1, UserErr: -1}
	}
	head := (*captraceStackHead)(unsafe.Pointer(unsafe.SliceData(b)))
	kbytes, ubytes := head.KstackBytes, head.UstackBytes
	b = b[stackHeadSize:]
	rs := &RawStacks{}
	if kbytes < 0 {
		rs.KernelErr = -kbytes
	} else if len(b) >= kstackBytes {
		n := min(int(kbytes), kstackBytes) / 8
		rs.Kernel = make([]uint64, n)
		for i := range n {
			rs.Kernel[i] = le.Uint64(b[i*8:])
		}
	}
	if len(b) <= kstackBytes {
		return rs // a kernel-stack record: no user part
	}
	u := b[kstackBytes:]
	if ubytes < 0 {
		rs.UserErr = -ubytes
		return rs
	}
	ustackEnd := MaxStackDepth * buildIDFrameSize
	if len(u) >= ustackEnd+exeIDSize {
		e := (*captraceExeId)(unsafe.Pointer(unsafe.SliceData(u[ustackEnd:])))
		rs.Exe = ExeID{Ino: e.Ino, DevMajor: e.Dev >> 20, DevMinor: e.Dev & (1<<20 - 1),
			StartCode: e.StartCode, EndCode: e.EndCode, Ppid: e.Ppid}
		u = u[:ustackEnd]
	}
	n := min(int(ubytes), len(u)) / buildIDFrameSize
	rs.User = make([]UserFrame, 0, n)
	for i := range n {
		f := u[i*buildIDFrameSize : (i+1)*buildIDFrameSize]
		var uf UserFrame
		switch int32(le.Uint32(f[0:])) {
		case buildIDValid:
			uf.HasBuildID = true
			copy(uf.BuildID[:], f[4:24])
			uf.Offset = le.Uint64(f[24:])
		case buildIDIP:
			uf.IP = le.Uint64(f[24:])
		default: // BPF_STACK_BUILD_ID_EMPTY: no more frames
			return rs
		}
		rs.User = append(rs.User, uf)
	}
	return rs
}
