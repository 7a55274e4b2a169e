package symbolize

import (
	"bytes"
	"debug/elf"
	"debug/gosym"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"sort"
)

// elfSym is one function symbol of a binary, by virtual address.
type elfSym struct {
	addr, size uint64
	name       string
}

// loadSeg maps file offsets to virtual addresses (a PT_LOAD segment).
type loadSeg struct {
	off, vaddr, filesz uint64
	exec               bool
}

// binaryInfo is what the symbolizer keeps of one ELF file.
type binaryInfo struct {
	module string // base name of the file, for frames
	loads  []loadSeg
	syms   []elfSym     // sorted by addr; empty when stripped
	gotab  *gosym.Table // Go binaries without a symbol table (stripped with -s)
}

// maxSymbols bounds the symbols kept per binary (a pod's binary is untrusted).
const maxSymbols = 1 << 20

// readBuildID returns the GNU build ID of an ELF file (NT_GNU_BUILD_ID), the
// one the kernel reports with BPF_F_USER_BUILD_ID.
// The section comes first: Go's linker puts .note.gnu.build-id outside its
// PT_NOTE segment, where the kernel never finds it.
func readBuildID(f *elf.File) ([20]byte, bool) {
	var id [20]byte
	var notes []io.Reader
	if s := f.Section(".note.gnu.build-id"); s != nil {
		notes = append(notes, s.Open())
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_NOTE {
			notes = append(notes, p.Open())
		}
	}
	for _, r := range notes {
		data, err := io.ReadAll(io.LimitReader(r, 1<<16))
		if err != nil {
			continue
		}
		for len(data) >= 12 {
			order := f.ByteOrder
			namesz := order.Uint32(data[0:])
			descsz := order.Uint32(data[4:])
			typ := order.Uint32(data[8:])
			nameEnd := 12 + align4(uint64(namesz))
			descEnd := nameEnd + align4(uint64(descsz))
			if descEnd > uint64(len(data)) {
				break
			}
			name := data[12 : 12+namesz]
			if typ == 3 /* NT_GNU_BUILD_ID */ && bytes.Equal(bytes.TrimRight(name, "\x00"), []byte("GNU")) {
				n := copy(id[:], data[nameEnd:nameEnd+uint64(descsz)])
				return id, n > 0
			}
			data = data[descEnd:]
		}
	}
	return id, false
}

func align4(n uint64) uint64 { return (n + 3) &^ 3 }

// parseBinary reads the symbols of f: the ELF symbol table (and dynamic
// symbols), else Go's pclntab through debug/gosym.
func parseBinary(f *elf.File, path string) *binaryInfo {
	b := &binaryInfo{module: filepath.Base(path)}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			b.loads = append(b.loads, loadSeg{off: p.Off, vaddr: p.Vaddr, filesz: p.Filesz, exec: p.Flags&elf.PF_X != 0})
		}
	}
	add := func(syms []elf.Symbol) {
		for _, s := range syms {
			if elf.ST_TYPE(s.Info) != elf.STT_FUNC || s.Value == 0 || len(b.syms) >= maxSymbols {
				continue
			}
			b.syms = append(b.syms, elfSym{addr: s.Value, size: s.Size, name: s.Name})
		}
	}
	if syms, err := f.Symbols(); err == nil {
		add(syms)
	}
	if syms, err := f.DynamicSymbols(); err == nil {
		add(syms)
	}
	sort.Slice(b.syms, func(i, j int) bool { return b.syms[i].addr < b.syms[j].addr })
	if len(b.syms) == 0 {
		b.gotab = goTable(f)
	}
	return b
}

// goTable reads a Go binary's pclntab, which survives stripping.
func goTable(f *elf.File) *gosym.Table {
	pcln := f.Section(".gopclntab")
	text := f.Section(".text")
	if pcln == nil || text == nil {
		return nil
	}
	data, err := pcln.Data()
	if err != nil {
		return nil
	}
	t, err := gosym.NewTable(nil, gosym.NewLineTable(data, text.Addr))
	if err != nil {
		return nil
	}
	return t
}

// vaddr converts a file offset (what the kernel reports with a build ID)
// to the binary's virtual address.
func (b *binaryInfo) vaddr(off uint64) (uint64, bool) {
	for _, l := range b.loads {
		if off >= l.off && off < l.off+l.filesz {
			return off - l.off + l.vaddr, true
		}
	}
	return 0, false
}

// frameAtIP formats a frame of the main executable whose text the kernel
// mapped at startCode (mm->start_code = load bias + the lowest executable
// segment's address).
func (b *binaryInfo) frameAtIP(ip, startCode uint64) (string, bool) {
	lowest, found := uint64(0), false
	for _, l := range b.loads {
		if l.exec && (!found || l.vaddr < lowest) {
			lowest, found = l.vaddr, true
		}
	}
	if !found || startCode < lowest {
		return "", false
	}
	va := ip - (startCode - lowest)
	for _, l := range b.loads {
		if va >= l.vaddr && va < l.vaddr+l.filesz {
			if name, delta, ok := b.name(va); ok {
				return fmt.Sprintf("%s+0x%x (%s)", clean(name), delta, clean(b.module)), true
			}
			return fmt.Sprintf("%s+0x%x", clean(b.module), va-l.vaddr+l.off), true
		}
	}
	return "", false
}

// name returns the function holding vaddr and the offset into it.
func (b *binaryInfo) name(vaddr uint64) (string, uint64, bool) {
	if len(b.syms) > 0 {
		i := sort.Search(len(b.syms), func(i int) bool { return b.syms[i].addr > vaddr }) - 1
		if i >= 0 {
			s := b.syms[i]
			if s.size == 0 || vaddr < s.addr+s.size {
				return s.name, vaddr - s.addr, true
			}
		}
		return "", 0, false
	}
	if b.gotab != nil {
		if fn := b.gotab.PCToFunc(vaddr); fn != nil {
			return fn.Name, vaddr - fn.Entry, true
		}
	}
	return "", 0, false
}

// frame formats one user frame at file offset off.
func (b *binaryInfo) frame(off uint64) string {
	if va, ok := b.vaddr(off); ok {
		if name, delta, ok := b.name(va); ok {
			return fmt.Sprintf("%s+0x%x (%s)", clean(name), delta, clean(b.module))
		}
	}
	// Stripped: module plus offset, still a place a reviewer can look up.
	return fmt.Sprintf("%s+0x%x", clean(b.module), off)
}

var errNotELF = errors.New("not an ELF file")

// openELF opens path as ELF, or says why not.
func openELF(r io.ReaderAt) (*elf.File, error) {
	var magic [4]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil || !bytes.Equal(magic[:], []byte(elf.ELFMAG)) {
		return nil, errNotELF
	}
	return elf.NewFile(r)
}
