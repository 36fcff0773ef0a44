"""pydicom's dictionary and UID registry answers for the names bulkdl itself asks about.

Importing pydicom costs ~0.15-0.2 s of single-threaded start-up, a twentieth of a 600 MB
loopback download. The header fast path (:mod:`bulkdl.dicom`) only needs a keyword's tag and VR,
and ``metadata.csv`` only the names of the common SOP Classes, so those answers are kept here for
the keywords of the layout presets, the series records and ``organize``, and for the storage
classes TCIA collections hold. Any other name goes to pydicom, imported then.
``tests/test_dicom.py`` checks every entry against pydicom and that the presets' and records'
keywords are all here. Pure data.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Final

#: keyword -> (tag, VR), or None for a name that is not a DICOM keyword (a TCIA field).
KEYWORDS: Final = MappingProxyType(
    {
        "AccessionNumber": (0x00080050, "SH"),
        "AcquisitionDate": (0x00080022, "DA"),
        "AcquisitionNumber": (0x00200012, "IS"),
        "AdmittingDiagnosesDescription": (0x00081080, "LO"),
        "AnnotationsFlag": None,
        "Authorized": None,
        "BodyPartExamined": (0x00180015, "CS"),
        "Collection": None,
        "Columns": (0x00280011, "US"),
        "ContentDate": (0x00080023, "DA"),
        "DataDescriptionURI": None,
        "DateReleased": None,
        "EthnicGroup": (0x00102160, "SH"),
        "FileSize": None,
        "FrameOfReferenceUID": (0x00200052, "UI"),
        "ImageCount": None,
        "ImageType": (0x00080008, "CS"),
        "InstanceNumber": (0x00200013, "IS"),
        "InstitutionName": (0x00080080, "LO"),
        "LicenseName": None,
        "LicenseURI": None,
        "LongitudinalTemporalEventType": (0x00120053, "CS"),
        "LongitudinalTemporalOffsetFromEvent": (0x00120052, "FD"),
        "Manufacturer": (0x00080070, "LO"),
        "ManufacturerModelName": (0x00081090, "LO"),
        "MaxSubmissionTimestamp": None,
        "Modality": (0x00080060, "CS"),
        "PatientAge": (0x00101010, "AS"),
        "PatientID": (0x00100020, "LO"),
        "PatientName": (0x00100010, "PN"),
        "PatientSex": (0x00100040, "CS"),
        "Phantom": None,
        "ProtocolName": (0x00181030, "LO"),
        "ReleasedStatus": None,
        "Rows": (0x00280010, "US"),
        "SOPClassUID": (0x00080016, "UI"),
        "SOPInstanceUID": (0x00080018, "UI"),
        "SeriesCount": None,
        "SeriesDate": (0x00080021, "DA"),
        "SeriesDescription": (0x0008103E, "LO"),
        "SeriesInstanceUID": (0x0020000E, "UI"),
        "SeriesNumber": (0x00200011, "IS"),
        "SeriesTime": (0x00080031, "TM"),
        "Site": None,
        "SliceThickness": (0x00180050, "DS"),
        "SoftwareVersions": (0x00181020, "LO"),
        "SpeciesCode": None,
        "SpeciesDescription": None,
        "StudyDate": (0x00080020, "DA"),
        "StudyDescription": (0x00081030, "LO"),
        "StudyID": (0x00200010, "SH"),
        "StudyInstanceUID": (0x0020000D, "UI"),
        "StudyTime": (0x00080030, "TM"),
        "ThirdPartyAnalysis": None,
    }
)

#: The VR of each tag above.
VR_OF: Final = MappingProxyType({entry[0]: entry[1] for entry in KEYWORDS.values() if entry})

#: SOP Class UID -> its registry name, for the storage classes TCIA collections hold.
SOP_CLASS_NAMES: Final = MappingProxyType(
    {
        "1.2.840.10008.5.1.4.1.1.2": "CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.2.1": "Enhanced CT Image Storage",
        "1.2.840.10008.5.1.4.1.1.4": "MR Image Storage",
        "1.2.840.10008.5.1.4.1.1.4.1": "Enhanced MR Image Storage",
        "1.2.840.10008.5.1.4.1.1.128": "Positron Emission Tomography Image Storage",
        "1.2.840.10008.5.1.4.1.1.130": "Enhanced PET Image Storage",
        "1.2.840.10008.5.1.4.1.1.20": "Nuclear Medicine Image Storage",
        "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography Image Storage",
        "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.1.2": "Digital Mammography X-Ray Image Storage - For Presentation",
        "1.2.840.10008.5.1.4.1.1.1.2.1": "Digital Mammography X-Ray Image Storage - For Processing",
        "1.2.840.10008.5.1.4.1.1.13.1.3": "Breast Tomosynthesis Image Storage",
        "1.2.840.10008.5.1.4.1.1.6.1": "Ultrasound Image Storage",
        "1.2.840.10008.5.1.4.1.1.3.1": "Ultrasound Multi-frame Image Storage",
        "1.2.840.10008.5.1.4.1.1.12.1": "X-Ray Angiographic Image Storage",
        "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.2": "Multi-frame Grayscale Byte Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.3": "Multi-frame Grayscale Word Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.7.4": "Multi-frame True Color Secondary Capture Image Storage",
        "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
        "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set Storage",
        "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose Storage",
        "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan Storage",
        "1.2.840.10008.5.1.4.1.1.481.1": "RT Image Storage",
        "1.2.840.10008.5.1.4.1.1.88.11": "Basic Text SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.22": "Enhanced SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.33": "Comprehensive SR Storage",
        "1.2.840.10008.5.1.4.1.1.88.59": "Key Object Selection Document Storage",
        "1.2.840.10008.5.1.4.1.1.11.1": "Grayscale Softcopy Presentation State Storage",
        "1.2.840.10008.5.1.4.1.1.77.1.6": "VL Whole Slide Microscopy Image Storage",
        "1.2.840.10008.5.1.4.1.1.30": "Parametric Map Storage",
        "1.2.840.10008.5.1.4.1.1.66": "Raw Data Storage",
        "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF Storage",
        "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration Storage",
        "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration Storage",
    }
)
