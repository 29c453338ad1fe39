package wire

import "fmt"

// Mode is a token mode from the DLM lattice (VAX/VMS, Linux DLM, Lustre).
// Its numeric value is its encoding on the wire (one byte).
type Mode uint8

// The six modes, weakest first. Shared is PR and Exclusive is EX for the
// simple API.
const (
	NL Mode = 0 // null: holds a place, conflicts with nothing
	CR Mode = 1 // concurrent read
	CW Mode = 2 // concurrent write
	PR Mode = 3 // protected read (shared)
	PW Mode = 4 // protected write
	EX Mode = 5 // exclusive

	Shared    = PR
	Exclusive = EX

	numModes = 6
)

// compat[a][b] reports whether a grant in mode a may coexist with one in mode b
// on overlapping ranges of the same token. The matrix is symmetric.
var compat = [numModes][numModes]bool{
	//        NL     CR     CW     PR     PW     EX
	NL: {true, true, true, true, true, true},
	CR: {true, true, true, true, true, false},
	CW: {true, true, true, false, false, false},
	PR: {true, true, false, true, false, false},
	PW: {true, true, false, false, false, false},
	EX: {true, false, false, false, false, false},
}

var modeNames = [numModes]string{"NL", "CR", "CW", "PR", "PW", "EX"}

// Valid reports whether m is one of the six defined modes.
func (m Mode) Valid() bool { return m < numModes }

// String returns the mode's name: NL, CR, CW, PR, PW or EX.
func (m Mode) String() string {
	if !m.Valid() {
		return fmt.Sprintf("Mode(%d)", uint8(m))
	}
	return modeNames[m]
}

// ParseMode accepts a mode name (NL, CR, CW, PR, PW, EX, case-insensitive)
// or the aliases "shared"/"sh" (PR) and "exclusive"/"ex" (EX).
func ParseMode(s string) (Mode, error) {
	switch lower(s) {
	case "nl", "null":
		return NL, nil
	case "cr":
		return CR, nil
	case "cw":
		return CW, nil
	case "pr", "shared", "sh", "read":
		return PR, nil
	case "pw":
		return PW, nil
	case "ex", "exclusive", "write":
		return EX, nil
	}
	return 0, fmt.Errorf("%w: %q (want one of NL CR CW PR PW EX, shared, exclusive)", ErrBadMode, s)
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// Compatible reports whether grants in modes a and b may be held at the same
// time on overlapping ranges. Invalid modes are compatible with nothing.
func Compatible(a, b Mode) bool {
	if !a.Valid() || !b.Valid() {
		return false
	}
	return compat[a][b]
}

// Covers reports whether mode a grants at least the rights of mode b: every
// mode that conflicts with b also conflicts with a. Converting from a to b is
// then a downgrade, which never has to wait.
func Covers(a, b Mode) bool {
	if !a.Valid() || !b.Valid() {
		return false
	}
	for m := Mode(0); m < numModes; m++ {
		if !compat[b][m] && compat[a][m] {
			return false
		}
	}
	return true
}

// Writes reports whether a holder in mode m may set the token's value block
// when it releases or downgrades (PW and EX, as in the DLM).
func (m Mode) Writes() bool { return m == PW || m == EX }
