"""mmseqrec.serve"""
