// Package rxtrust carries one fact from lroendpoint to the lro.Engine it
// makes, without a setting users see: whether the link endpoint below the
// engine verified the checksums of every packet it delivers.
//
// A PacketBuffer says so itself (RXChecksumValidated), but a frame handed
// over as views (rxbatch.FragmentDispatcher) has no such flag, and not
// every link endpoint that reports stack.CapabilityRXChecksumOffload sets
// the flag on its packets. lroendpoint knows the lower endpoint's
// capabilities; lro.New asks the dispatcher it delivers to.
package rxtrust

// Lower is implemented by a dispatcher above an lro.Engine that knows the
// link endpoint below the engine: lroendpoint's.
type Lower interface {
	// LowerVerifiesChecksums reports whether the link endpoint below the
	// engine verified the checksums of every packet it delivers, as one
	// reporting stack.CapabilityRXChecksumOffload does.
	LowerVerifiesChecksums() bool
}
